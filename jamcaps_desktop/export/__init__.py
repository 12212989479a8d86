"""Model code for exporting and comparing: needs the optional export extra (torch)."""
