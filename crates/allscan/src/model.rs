//! The seed classifier: DenseNet backbone + GAP + Dense(256) + Dropout + Dense(1|4).
