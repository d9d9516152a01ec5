// Preload (node --import) for the suite's client: a request left unanswered fails that one test
// after CONFORMANCE_REQUEST_TIMEOUT_MS instead of hanging the whole run.
import http from 'node:http'

const ms = Number(process.env.CONFORMANCE_REQUEST_TIMEOUT_MS || 45000)
const request = http.request

http.request = function (...args) {
  const req = request.apply(this, args)
  req.setTimeout(ms, () => req.destroy(new Error(`no response within ${ms} ms`)))
  return req
}
