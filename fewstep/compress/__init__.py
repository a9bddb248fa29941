"""Training: teachers, the trajectory-pair cache, every distillation method (one plugin module each under
`methods/`) and the ONE training loop they all run in."""
