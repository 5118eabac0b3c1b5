const TOKEN = 'YOUR_ADMIN_TOKEN';
const ws = new WebSocket(`ws://djdjdj.cyou/ws/parser?token=${TOKEN}`);

ws.onopen = () => {
  // No auth message needed — token was passed at connect

  ws.send(JSON.stringify({
    action: 'parser.configure',
    payload: { parser_type: 'poshmark', parsing_mode: 'com', batch_size: 25 }
  }));

  ws.send(JSON.stringify({ action: 'parser.fetch', payload: {} }));
};

ws.onmessage = (event) => {
  const msg = JSON.parse(event.data);
  if (msg.action === 'parser.fetch') {
    console.log('Got', msg.data.count, 'items');
  }
};
