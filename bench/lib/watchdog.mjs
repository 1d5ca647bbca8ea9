// Every process the bench starts exits on its own when the bench process is gone (even if the
// bench was SIGKILLed and could not clean up).
const parent = Number(process.env.BENCH_PARENT_PID)
if (Number.isInteger(parent) && parent > 0) {
  setInterval(() => {
    try { process.kill(parent, 0) } catch { process.kill(process.pid, 'SIGKILL') }
  }, 1000).unref()
}
