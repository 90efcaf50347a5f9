"""What every stage needs: the expected errors, atomic and bounded file access, what Fashion-MNIST is."""
