"""Export of trained networks to other tools: NIR graphs (nir)."""
