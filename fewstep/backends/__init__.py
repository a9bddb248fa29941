"""Engine backends as plugins, one file each (`fewstep.runtime.registry` finds them): how engines of the
backend are opened, whether they can run here, where they rank, and which exporter writes them."""
