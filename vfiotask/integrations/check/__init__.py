"""`vfiotask check`: what would stop or slow a VFIO guest on this host, found before it starts."""
