"""The dimension-6 student: models, HetComp losses and objectives, and the Ray Train DDP trainer."""
