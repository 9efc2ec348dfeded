"""HQ-SAM support (paper Table 6): HQ-SAM builders over the segment-anything-hq package and
`StableHQSamPredictor`, a drop-in for segment_anything_hq.SamPredictor. The model itself is
`stable_sam.modeling.stable_hq_sam.StableHQSam`. Needs the `hq` extra (segment-anything-hq, timm);
importing this package does not import segment_anything_hq until a model is built."""
