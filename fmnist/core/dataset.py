"""What Fashion-MNIST is: ten garment classes, 28x28 grey images, 60,000 + 10,000 of them.

    CLASSES[label]        # "T-shirt/top" for label 0, ... "Ankle boot" for 9

Every module that names a class or checks a size takes it from here.
"""

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SIZE = 28  # images are SIZE x SIZE uint8 grey levels, a light garment on a dark ground
# Images in each split of the official release; the validation set is cut from "train".
OFFICIAL_COUNTS = {"train": 60_000, "test": 10_000}
# 70,000 images in all: however the data set is split, no file of it holds more. The bound
# of every file that holds images (raw IDX files, prepared splits) follows from it.
MAX_COUNT = sum(OFFICIAL_COUNTS.values())
