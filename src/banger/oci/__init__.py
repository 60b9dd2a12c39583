"""OCI images: references, the registry client, the blob cache, layer flattening, ext4."""
