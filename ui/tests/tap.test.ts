import { describe, expect, it } from 'vitest';
import { tapOf } from '../src/lib/host/tauri';

describe("a phone notification's tap", () => {
  const approval = { route: '/chat/dm-1', approval_id: 'ap-1' };

  it('Approve and Deny answer the approval the notification carries', () => {
    expect(tapOf({ actionId: 'approve', notification: { extra: approval } })).toEqual({ kind: 'answer', id: 'ap-1', action: 'approve' });
    expect(tapOf({ actionId: 'deny', notification: { extra: approval } })).toEqual({ kind: 'answer', id: 'ap-1', action: 'deny' });
  });

  it('a tap on the body opens its screen; a dismissal does nothing', () => {
    expect(tapOf({ actionId: 'tap', notification: { extra: approval } })).toEqual({ kind: 'open', route: '/chat/dm-1' });
    expect(tapOf({ actionId: 'dismiss', notification: { extra: approval } })).toBeNull();
  });

  it('a button without an approval id answers nothing', () => {
    expect(tapOf({ actionId: 'approve', notification: { extra: { route: '/agents' } } })).toEqual({ kind: 'open', route: '/agents' });
    expect(tapOf({ actionId: 'approve', notification: { extra: { approval_id: 7 } } })).toBeNull();
    expect(tapOf(null)).toBeNull();
  });
});
