import './app.css';
import { mount } from 'svelte';
import App from './App.svelte';
import { installRouter } from './lib/router.svelte';
import { shell } from './lib/app.svelte';
import { startOfflineReading } from './lib/pwa.svelte';

installRouter();
mount(App, { target: document.getElementById('app')! });
void startOfflineReading(shell.tauri);
