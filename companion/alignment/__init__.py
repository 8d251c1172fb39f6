"""Part 5 of the book: data, objectives and alignment (one module per paper)."""
