import { describe, expect, it } from 'vitest'
import { libp2pLogger } from '../../src/peer/silent-logger.ts'

describe('libp2p logger', () => {
  it('is one disabled logger, all the way down its scopes, when DEBUG is not set', () => {
    for (const env of [{}, { DEBUG: '' }, { DEBUG: '  ' }]) {
      const component = libp2pLogger(env)
      expect(component).toBeDefined()
      const log = component!.forComponent('libp2p:yamux')
      expect(log.enabled).toBe(false)
      const scoped = log.newScope('stream:1').newScope('select')
      expect(scoped.enabled).toBe(false)
      // called as libp2p calls them: nothing is printed, nothing is thrown
      expect(() => { log('a %s', 'message'); log.error('an error', new Error('x')); scoped.trace('a trace') }).not.toThrow()
      expect(component!.forComponent('libp2p:tcp')).toBe(log)
    }
  })

  it('leaves libp2p its own logger when DEBUG names anything', () => {
    expect(libp2pLogger({ DEBUG: 'libp2p:*' })).toBeUndefined()
  })
})
