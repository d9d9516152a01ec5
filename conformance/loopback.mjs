// Preload (node --import): a listen() given only a port binds 127.0.0.1 instead of every interface.
import net from 'node:net'

const listen = net.Server.prototype.listen

function isPort (value) {
  return typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value))
}

net.Server.prototype.listen = function (...args) {
  if (args.length === 0 || typeof args[0] === 'function') {
    args.unshift(0, '127.0.0.1')
  } else if (isPort(args[0]) && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1')
  } else if (args[0] && typeof args[0] === 'object' && 'port' in args[0] && !args[0].host && !args[0].path) {
    args[0] = { ...args[0], host: '127.0.0.1' }
  }
  return listen.apply(this, args)
}
