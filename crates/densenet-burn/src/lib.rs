//! torchvision DenseNet in Burn.
