"""DP-IQA models: torch-exact resizing, adapters, Quality Feature Decoder, teacher and student."""
