"""The net and pixels to probabilities: architectures, the model file, the classifier, the device
(train, evaluate, export)."""
