"""Converters between PyTorch state dicts (diffusers, transformers, torchvision, the DP-IQA
authors') and our Flax variables."""
