"""IQA datasets: TFDS builders, split files, image decoding and the Grain input pipeline."""
