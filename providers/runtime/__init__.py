"""The runtime every provider server shares: servicer, tasks, server, driver base."""
