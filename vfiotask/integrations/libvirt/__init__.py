"""libvirt integration: the domain model, the qemu hook and its installation, staging ahead of a
start, and tuning.  No argument parsing here: the command line is `integrations/cli`.

Kept free of imports on purpose: the hook imports this package for every phase of every guest,
and for a guest that is not ours it must be gone within milliseconds.
"""
