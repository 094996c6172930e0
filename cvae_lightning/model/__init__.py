"""What is trained: the CVAE, its networks and priors, its LightningModule and the MNIST DataModule."""
