/** JSON nested `levels` deep (objects and arrays alternating), as text: a client's JSON.stringify would overflow first. */
export function nestedJson (levels: number): string {
  let open = ''
  let close = ''
  for (let i = 0; i < levels; i++) {
    open += i % 2 === 0 ? '{"a":' : '['
    close = (i % 2 === 0 ? '}' : ']') + close
  }
  return open + '1' + close
}
