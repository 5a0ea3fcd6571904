"""portfolio: positions, realised and unrealised PnL, equity and drawdown."""

from runtime.domains.portfolio.actor import Portfolio
from runtime.domains.portfolio.ledger import Closed, Ledger, Opened, Position

__all__ = ["Closed", "Ledger", "Opened", "Portfolio", "Position"]
