"""Nearest neighbours of images in a training set by Hamming distance between bit tokens, LPIPS and pixel L2
(the memorization check of the MaskBit paper, appendix G), over FAISS indexes."""
