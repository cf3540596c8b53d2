"""The student stage: one Ray Train TorchTrainer (DDP) per (method, student), with DKC rounds between
epochs and the λ_KD grid of the baselines."""
