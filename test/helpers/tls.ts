import { execFileSync } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'

/**
 * Certificates for TLS origins of the tests, made with openssl (Debian's
 * `openssl`; .ci/run installs it) in `dir`: an authority of the test's own
 * and a certificate it signed for 127.0.0.1 (trusted where the authority is:
 * NODE_EXTRA_CA_CERTS=ca for a daemon), and a self-signed certificate for
 * 127.0.0.1 that nothing trusts.
 */
export interface TestCertificates {
  /** the authority's certificate (PEM) */
  ca: string
  /** signed by the authority: certificate and key files */
  cert: string
  key: string
  /** self-signed, trusted by nobody */
  strangerCert: string
  strangerKey: string
}

const KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

export async function makeCertificates (dir: string): Promise<TestCertificates> {
  const at = (name: string): string => join(dir, name)
  const openssl = (...args: string[]): void => { execFileSync('openssl', args, { stdio: 'ignore' }) }
  openssl('req', '-x509', ...KEY, '-days', '1', '-subj', '/CN=kith test authority', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign',
    '-keyout', at('ca.key'), '-out', at('ca.pem'))
  openssl('req', ...KEY, '-subj', '/CN=127.0.0.1', '-keyout', at('server.key'), '-out', at('server.csr'))
  await writeFile(at('server.ext'), 'subjectAltName=IP:127.0.0.1\n')
  openssl('x509', '-req', '-in', at('server.csr'), '-CA', at('ca.pem'), '-CAkey', at('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', at('server.ext'), '-out', at('server.pem'))
  openssl('req', '-x509', ...KEY, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', at('stranger.key'), '-out', at('stranger.pem'))
  return { ca: at('ca.pem'), cert: at('server.pem'), key: at('server.key'), strangerCert: at('stranger.pem'), strangerKey: at('stranger.key') }
}
