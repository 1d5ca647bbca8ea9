/** The demo's price list (whole credits per unit). Stock and balances are seeded at run time. */
export const PRICES: Readonly<Record<string, number>> = Object.freeze({
  apple: 3,
  pear: 5,
  fig: 8
})

/** Routing key of the transactional message the order service publishes on commit. */
export const ORDER_PLACED = 'order.placed'
