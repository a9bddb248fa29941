"""Quality measurement: domain FID / KID (and Inception FID when its weights are local), prompt adherence, judges."""
