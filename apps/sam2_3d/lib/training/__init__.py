"""Fine-tuning SAM 2 on the datastore's final labels (issue 10): clips, SAM 2's video forward, losses,
the Lightning module, and the model versions a run writes. The monailabel task is lib/trainers/."""
