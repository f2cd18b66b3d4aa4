"""Data: file discovery and decoding, class tables, normalisation constants, batched augmentation."""
