"""MaskBit Explorer: the Gradio app over maskbit/, indexes/ and train/ (`python -m app`)."""
