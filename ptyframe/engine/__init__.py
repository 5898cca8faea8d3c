"""The reconstruction engine: parameter blocks, specifications, forward model, Reconstruction."""
