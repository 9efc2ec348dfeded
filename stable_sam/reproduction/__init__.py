"""The small-scale reproduction of the paper's Tables 2 and 5 and the embedded `demo` model:
`encoder` (a small conv image encoder), `demo_model` (the demo SAM and its shipped weights),
`base_sam` (training the base SAM on clean prompts), `pipeline` (plugins, baselines, the
evaluation of all six methods and the results table)."""
