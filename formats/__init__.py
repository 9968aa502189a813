"""On-disk dataset formats read by data.py: downloads and static image files (readers), event
recordings and their frame caches (events), and your own data in one .npz file (npz)."""
