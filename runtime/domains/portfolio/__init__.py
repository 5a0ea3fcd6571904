"""portfolio: positions, realised and unrealised PnL, equity and drawdown."""
