"""Reading, synthesising, preparing and augmenting face data."""
