"""The data sets: registered ones, image folders and synthetic data, their subsets and splits."""
