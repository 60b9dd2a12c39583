"""VM domain logic that does no I/O: names, lifecycle states, boot command lines."""
