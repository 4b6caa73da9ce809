"""M5 for a classifier: adapt a trained model to a new scene, replaying a history library and
mixing the two gradients."""
