"""M5 for a detector: generated scenes, the detector and its mAP, and the adapt job that learns
from a person's checks."""
