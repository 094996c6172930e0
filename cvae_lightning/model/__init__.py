"""What is trained: the CVAE (`cvae`), its networks (`nets`) and priors (`priors`), the LightningModule that
trains it (`module`) and the MNIST DataModule it trains on (`data`)."""
