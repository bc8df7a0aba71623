import { describe, expect, it } from 'vitest';
import { scanPairingCode, type QrScanner } from '../src/lib/host/tauri';

function camera(permission: string, afterRequest: string, content = 'taos-pair-v1.abc'): QrScanner & { asked: number; scans: number } {
  const fake = {
    asked: 0,
    scans: 0,
    checkPermissions: async () => permission,
    requestPermissions: async () => {
      fake.asked += 1;
      return afterRequest;
    },
    scanQr: async () => {
      fake.scans += 1;
      return content;
    },
  };
  return fake;
}

describe('scanning the pairing QR code', () => {
  it('scans at once when the camera is already allowed', async () => {
    const cam = camera('granted', 'denied', '  taos-pair-v1.xyz\n');
    await expect(scanPairingCode(cam)).resolves.toBe('taos-pair-v1.xyz');
    expect(cam.asked).toBe(0);
  });

  it('asks for the camera first when the user has not answered', async () => {
    const cam = camera('prompt', 'granted');
    await expect(scanPairingCode(cam)).resolves.toBe('taos-pair-v1.abc');
    expect(cam.asked).toBe(1);
  });

  it('refuses clearly without the camera, and never opens it', async () => {
    const cam = camera('denied', 'denied');
    await expect(scanPairingCode(cam)).rejects.toMatchObject({ code: 'camera', message: expect.stringMatching(/paste the code/) });
    expect(cam.scans).toBe(0);
  });

  it('refuses an empty code', async () => {
    await expect(scanPairingCode(camera('granted', 'granted', '  '))).rejects.toMatchObject({ code: 'camera' });
  });
});
