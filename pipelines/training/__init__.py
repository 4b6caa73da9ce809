"""What one training step needs: models, the batch loss with its augmentations, the collectives
the ranks agree through, schedules, saved models and accuracy."""
