"""Training: the SFT loop (sft), its cost and memory accounting (cost), and its speed benchmark against TRL (bench)."""
