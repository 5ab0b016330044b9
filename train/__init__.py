"""sparse24.train: 2:4 pretraining recipes (dense, T-SR-STE + masked decay + dense fine-tune, S-STE) with accelerate."""
