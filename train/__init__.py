"""Training for MaskBit Explorer: datasets, preprocessing and the two training stages (tokenizer, generator)."""
