"""The census: the post-hoc audit of a model already trained, with no canary (Dar et al. 2024, CopyMark): how many
generated images are copies of training images, and how many training images, groups and patients they copy, under a
threshold fitted on real images the model never saw (:mod:`.stage`)."""
