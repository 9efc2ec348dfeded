"""The small-scale reproduction of the paper's Tables 2 and 5 and the embedded `demo` model:
`base_sam` (training the base SAM on clean prompts), `pipeline` (plugins, baselines, the
evaluation of all six methods and the results table). The model itself (its conv encoder,
builder and shipped weights) is the demo family, `stable_sam.families.demo`."""
