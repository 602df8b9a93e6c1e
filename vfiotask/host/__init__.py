"""Host facts and the kernel calls vfiotask makes.

Every reader takes a `root` (default `/`) so that tests can point it at a fixture tree under
`fixtures/`; nothing here decides policy.
"""
