"""banger: disposable Linux development VMs (CLI ``banger``, daemon ``bangerd``)."""
